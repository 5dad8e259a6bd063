"""Names of the per-frame render controls of the built-in corpus.

One frame of the synthetic corpus is fully described by an identity (fixed per actor)
and a vector of these controls. They are stored per frame as ground truth
(`render_params` in frames.zarr), so later stages can probe what their features carry.
"""

# Mouth shape from speech (visemes). 0 = rest.
VISEME_CONTROLS = (
    "viseme_jaw",      # jaw opening driven by the phoneme stream, 0..1
    "viseme_spread",   # lip spreading (i, e), 0..1
    "viseme_round",    # lip rounding / protrusion (u, o, w), 0..1
    "viseme_closure",  # lip closure on p/b/m, 0..1 (1 = lips pressed together)
)

# What the renderer actually draws: visemes combined with the emotion's mouth offsets.
MOUTH_CONTROLS = (
    "jaw_open",        # 0 closed .. 1 wide open
    "lip_spread",      # 0..1
    "lip_round",       # 0..1
    "lip_closure",     # 0..1
    "mouth_corner",    # -1 corners down (sad) .. +1 corners up (smile)
    "mouth_width",     # -1 narrow .. +1 wide
    "smirk",           # 0..1 one-sided corner raise (contempt)
    "upper_lip_raise", # 0..1 upper lip lifted (disgust)
)

# Upper-face expression.
FACE_CONTROLS = (
    "brow_raise",      # -1 lowered .. +1 raised (whole brow)
    "brow_furrow",     # 0..1 brows pulled down and together
    "brow_inner_up",   # 0..1 inner brow ends lifted (sad, fear)
    "lid_open",        # -1 narrowed .. +1 wide open (upper lid), blink applies on top
    "cheek_raise",     # 0..1 cheeks and lower lids lifted
    "nose_wrinkle",    # 0..1
    "blink",           # 0 open .. 1 closed
)

# Rigid head pose. Angles in degrees; tx, ty as fractions of the frame size; scale multiplicative.
POSE_CONTROLS = ("yaw", "pitch", "roll", "tx", "ty", "scale")

RENDER_CONTROLS = MOUTH_CONTROLS + FACE_CONTROLS + POSE_CONTROLS
ALL_CONTROLS = VISEME_CONTROLS + RENDER_CONTROLS

NEUTRAL = {name: (1.0 if name == "scale" else 0.0) for name in ALL_CONTROLS}
