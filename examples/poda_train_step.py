"""One PODA adaptation step on a synthetic batch: the command line of ``styleda_fast.train.poda_train_step``.

python examples/poda_train_step.py --crop 288 --batch 2
"""

from styleda_fast.train.poda_train_step import main

if __name__ == "__main__":
    main()
