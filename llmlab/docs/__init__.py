"""The generated reference pages (docs/reference/): configuration fields, config groups and command options, read
from the schemas' attribute docstrings, the ConfigStore and conf/. `python -m llmlab.docs` writes them."""
