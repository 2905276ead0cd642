"""tlplug-peft: LoRA adapters for tlplug, through Hugging Face peft.

Registers the ``lora`` adapter (``--adapter lora``), which injects LoRA into the backbone
and saves merged weights, and the ``lora`` freeze schedule (``--schedule lora``), which
trains every group's adapter parameters and the head from the first epoch.
"""

from tlplug import hookimpl

from tlplug_peft.lora import lora
from tlplug_peft.schedule import lora_schedule

__version__ = "0.1.0"
TLPLUG_HOOK_API = "1.0"

__all__ = ["TLPLUG_HOOK_API", "__version__", "lora", "lora_schedule"]


@hookimpl
def tlplug_register_adapters(register):
    """Register the ``lora`` adapter."""
    register("lora", lora)


@hookimpl
def tlplug_register_schedules(register):
    """Register the ``lora`` freeze schedule."""
    register("lora", lora_schedule)
