"""One FAMix training step on a synthetic batch: the command line of ``styleda_fast.train.famix_train_step``.

python examples/famix_train_step.py --crop 288 --batch 2 --in-place --checkpoint
"""

from styleda_fast.train.famix_train_step import main

if __name__ == "__main__":
    main()
