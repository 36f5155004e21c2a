from emsan.cli.main import entry

entry()
