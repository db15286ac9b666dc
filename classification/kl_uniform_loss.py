"""SOPHON with the KL-to-uniform (KLU) suppression loss; otherwise identical to inverse_loss.py.

    python classification/kl_uniform_loss.py                       # tiny-gpt2, RT restricted, NEWS original
"""

from sophon.cli import classification_main

if __name__ == "__main__":
    classification_main(__doc__, losses=("klu",))
