"""What the tests share: tiny settings and models, the CLI harness, fixture data. Test modules import from
here (``from support.tiny import tiny_run``), never from each other."""
