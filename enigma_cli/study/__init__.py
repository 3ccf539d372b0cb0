"""`enigma study`: the paper's claim that pre-training SI predicts training outcomes, tested in one command."""
