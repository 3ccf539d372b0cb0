"""Models: the tiny Llama that `enigma` builds and ships (enigma-tiny), its pre-training, loading and rollout."""
