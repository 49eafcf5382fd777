"""Train the model: `torchrun --nproc_per_node=2 jobs/train.py --profile local [--set k=v]`."""

from behaviorgpt.train import main

if __name__ == "__main__":
    main()
