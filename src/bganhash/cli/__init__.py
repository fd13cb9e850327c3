"""`bganhash` command line: each command a thin layer over the library.

User errors print one line on stderr and exit with code 2; `--json` prints one JSON document on stdout
(progress bars and notes go to stderr).
"""

from __future__ import annotations

import click

from bganhash.cli import duplicates as duplicates_cli
from bganhash.cli import reproduce as reproduce_cli
from bganhash.cli import research
from bganhash.cli import search as practitioner
from bganhash.cli._common import CleanErrors


@click.group(cls=CleanErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bganhash")
def main() -> None:
    """Learn compact binary codes for images without labels (BGAN), index and search them, and
    evaluate retrieval as the hashing literature does."""


for _command in (research.features, research.baselines, research.train, research.encode,
                 reproduce_cli.reproduce, practitioner.index, practitioner.search,
                 duplicates_cli.duplicates, practitioner.serve):
    main.add_command(_command)
