"""The built-in strategies. Each module is a plain plugin, registered exactly as a
third-party one would be; pyproject.toml lists the same modules under the ``tlplug``
entry-point group."""

BUILTIN_PLUGINS: dict[str, str] = {
    "timm": "tlplug.builtin.timm_backbones",
    "torchvision": "tlplug.builtin.torchvision_backbones",
    "heads": "tlplug.builtin.heads",
    "schedules": "tlplug.builtin.schedules",
    "lr-schedules": "tlplug.builtin.lr_schedules",
    "augmentations": "tlplug.builtin.augmentations",
    "data-sources": "tlplug.builtin.data_sources",
    "distillation": "tlplug.builtin.distillation",
    "exporters": "tlplug.builtin.exporters",
    "console": "tlplug.builtin.console_report",
    "metrics": "tlplug.builtin.metrics_log",
    "loggers": "tlplug.builtin.loggers",
    "plots": "tlplug.builtin.plots",
}
