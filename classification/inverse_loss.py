"""SOPHON with the inverse cross-entropy (ICE) suppression loss.

    python classification/inverse_loss.py                          # tiny-gpt2, RT restricted, NEWS original
    python classification/inverse_loss.py --arch gpt2 --dataset IMDB --original PILE --data_root DIR
    python classification/inverse_loss.py --loss ice-released      # the released code's CE(-z, y) form
"""

from sophon.cli import classification_main

if __name__ == "__main__":
    classification_main(__doc__, losses=("ice", "ice-released"))
