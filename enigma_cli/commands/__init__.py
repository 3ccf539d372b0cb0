"""One module per command; each exposes a function (or a Typer sub-app) that `enigma_cli.cli` registers."""
