"""Root pytest configuration.

Triton fixes its interpreter mode when first imported, and lightning or torch._dynamo may import
it early during collection; setting the mode here lets the kernel tests run Triton on the CPU
whatever the collection order.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
