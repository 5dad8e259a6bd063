"""The evaluator's judges: an emotion classifier and a 68-point landmark regressor trained on the training
actors' real frames. Trained early (stage train_evaluator) because pseudo_pairs measures re-dubbed mouths with
the landmark judge; evaluate and emotion_ceiling score with both.
"""
