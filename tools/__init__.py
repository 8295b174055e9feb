"""The command-line tools, one thin script each (parser, main, launch; see soco_d2/cli.py).
Installed with soco_d2 as ``soco_d2.tools`` behind the console entry points soco-d2-*."""
