"""Pre-training enigma-tiny, the built-in default model (`enigma build-default-model`)."""
