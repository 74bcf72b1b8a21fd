"""Tasks (packaged assets now; hub datasets and user files plug in as loaders) and batching.

Importing this package registers the built-in tasks without reading any data: rows are loaded (and
assets fetched) on the first ``examples()``/``encode()`` call.
"""

from statprune.data import glue, moby_dick, movie, sotu, squad, wikitext  # noqa: F401  (register the built-in tasks)
from statprune.data.collate import IGNORE_INDEX, batches, collate
from statprune.data.tasks import SPLITS, TASKS, LMTask, Task, TextTask, get_task, hash_split

__all__ = [
    "IGNORE_INDEX",
    "SPLITS",
    "TASKS",
    "LMTask",
    "Task",
    "TextTask",
    "batches",
    "collate",
    "get_task",
    "hash_split",
]
