"""Re-aggregate a training-strategies study: python experiments/strategies/aggregate.py <sweep dir> [options].

The multirun does this itself when it ends (the AggregateCallback of experiment=strategies); run this after adding
jobs to a sweep folder, when a sweep was interrupted, or to look at another K'.
"""
import argparse

from and_lightning.analysis.strategies import aggregate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="the Hydra sweep folder (its job folders hold study_result.json)")
    parser.add_argument("--wandb-project", default=None,
                        help="also log the tables and plots to this project, in the sweep's W&B group")
    parser.add_argument("--k-prime", type=int, default=4,
                        help="K' of the uninterpretable-neuron criterion (spec §9.5; default 4)")
    args = parser.parse_args()
    out = aggregate(args.sweep_dir, args.wandb_project, args.k_prime)
    print(f"{out['jobs']} jobs -> {', '.join(out['files'])}")


if __name__ == "__main__":
    main()
