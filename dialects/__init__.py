"""The dialect registry: each dialect module here defines one ``DIALECT``, and this tuple is the only list.

To add a dialect, write ``dialects/NAME.py`` with a ``DIALECT`` (see ``contract.py``) and add it below;
what the importer asks of it may live beside it (``qwen_import.py``).
"""

from __future__ import annotations

from dialects import openai, qwen
from dialects.contract import Dialect

# Order matters to the importer only: the first dialect that recognises a capture wins.
DIALECTS: dict[str, Dialect] = {module.DIALECT.name: module.DIALECT for module in (qwen, openai)}
