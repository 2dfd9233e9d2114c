"""placeholder"""

import argparse

from service.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secret")


def run(args: argparse.Namespace, settings: Settings) -> int:
    return 0
