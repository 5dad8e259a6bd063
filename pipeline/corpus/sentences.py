"""The fixed sentence list of the built-in corpus.

Short English sentences (1.8-2.6 s with the default voice at 160 words per minute), written
for this project, dense in bilabials (p, b, m) and open vowels so that mouth closures and
openings are frequent and easy to see. Every actor speaks the same sentences in every
emotion, as in MEAD; the corpus stage picks train/test sentences by index.
"""

from __future__ import annotations

import numpy as np

SENTENCES: tuple[str, ...] = (
    "The big map was put by the pond.",
    "Bob bought a bag of plump apples.",
    "My father parked the car by the barn.",
    "Pam made a pot of warm bean soup.",
    "A brown box fell from the top shelf.",
    "Mom baked bread for the market stall.",
    "The boy swam past the boat at dawn.",
    "Please pass me the paper and the pen.",
    "We sat on the bench by the palm tree.",
    "Bright lamps shone above the harbour.",
    "The calm lake was bathed in pale light.",
    "Put the books back on the blue bench.",
    "A large barge moved up the broad river.",
    "The band played music in the park at night.",
    "Mark painted a bold map of the farm.",
    "The puppy barked at a bumble bee.",
    "Father asked me about the broken pump.",
    "Bring the milk jug back to the barn.",
    "The tall man wore a bright purple cap.",
    "Maybe we can buy a bike in May.",
    "The bottle of lime water is empty.",
    "Big waves pounded the sandy beach.",
    "Tom parked the van behind the mill.",
    "A small bird sang above the marsh.",
    "Open the window and watch the sun.",
    "The map shows a path around the lake.",
    "Bees buzz about the bright yellow blooms.",
    "Bob owns a pair of brown boots.",
    "The army marched past the palace gate.",
    "Moths flapped around the paper lamp.",
    "A warm breeze blew across the pasture.",
    "Hot bread is a bargain at the market.",
    "The captain spotted a bay full of boats.",
    "Pat promised to bring home a pumpkin.",
    "The baby laughed at the big blue ball.",
    "Ample time was spent on the brass band.",
    "Grab a mop and wipe up the mess.",
    "The farmer's barn is by the apple farm.",
    "My mother hums a calm tune at bedtime.",
    "Pour the hot broth into a bowl.",
)


def pick_sentences(rng: np.random.Generator, n: int) -> list[int]:
    """n distinct sentence indices in random order (drawn from rng, so seeded runs agree)."""
    if not 0 <= n <= len(SENTENCES):
        raise ValueError(f"cannot pick {n} distinct sentences from {len(SENTENCES)}")
    return [int(i) for i in rng.permutation(len(SENTENCES))[:n]]
