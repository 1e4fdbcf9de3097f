"""Built-in tasks, installed as ``nftbench.tasks``. Each ``*.yaml`` here is a declarative task
(see ``nftbench.task``), registered when plugins load (``nftbench.plugins.load_plugins``);
Python modules here may register task classes with ``@register_task``."""
