"""Re-aggregate a pruning multirun: python experiments/unlearning/aggregate.py <sweep dir> [--wandb-project NAME].

The multirun does this itself when it ends (experiment=unlearn_table4 / unlearn_fig4 install the Hydra callback);
run this after adding jobs to a sweep folder or when a sweep was interrupted.
"""
import argparse

from and_lightning.prune.aggregate import aggregate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="the Hydra sweep folder (its job folders hold unlearn_result.json)")
    parser.add_argument("--wandb-project", default=None, help="also log the table to this project, in the sweep's group")
    args = parser.parse_args()
    out = aggregate(args.sweep_dir, args.wandb_project)
    print(f"{out['jobs']} jobs -> {', '.join(out['files'])}")


if __name__ == "__main__":
    main()
