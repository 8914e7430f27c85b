"""Applications: data hyper-cleaning and few-shot learning / hyper-representation, plus the toy problems.

Each task module (``hyperclean``, ``fewshot``, ``toy``) exposes ``OPTIONS``, ``COMMON_DEFAULTS`` and
``build(config) -> TaskRun`` (docs/tasks.md). The modules are imported lazily by name (``TASKS``) so that
``import bilevel.app.tasks`` stays cheap.
"""
from bilevel.app.tasks.base import TaskRun

#: Task names the runner accepts: ``importlib.import_module(f"bilevel.app.tasks.{name}")``.
TASKS = ("hyperclean", "fewshot", "toy", "fewshot-init")

__all__ = ["TaskRun", "TASKS"]
