"""Every table of the README in one command (resumable; finished cells are skipped).

    python reproduce.py                                   # all settings, standard suite, 3 seeds
    python reproduce.py --setting image --suite standard  # one setting
    python reproduce.py --suite quick --seeds 2 --tune 0  # a fast look
"""

from sophon.reproduce import main

if __name__ == "__main__":
    main()
