import argparse
import importlib

from qat.bench import SUBCOMMANDS


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m qat.bench", description=__doc__)
    parser.add_argument("subcommand", choices=[*SUBCOMMANDS, "all"])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, no report (smoke test only)"
    )
    args = parser.parse_args(argv)
    names = SUBCOMMANDS if args.subcommand == "all" else (args.subcommand,)
    for name in names:
        module = importlib.import_module(f"qat.bench.{name}")
        print(f"== {name} ==")
        module.run(quick=args.quick)  # prints its own table


if __name__ == "__main__":
    main()
