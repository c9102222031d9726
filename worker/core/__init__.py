"""The pure core: plain objects, no I/O, no faust/aiokafka/asyncio, no logging setup."""
