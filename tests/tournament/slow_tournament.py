"""``python slow_tournament.py [tournament args]``: the tournament command with a ``slow`` backend.

``slow`` is the scripted random generator sleeping ``delay`` seconds per generate call, so a test
can SIGKILL a real tournament process mid-run.
"""

import sys
import time

from debate_lightning.models.registry import register
from debate_lightning.models.scripted import RandomGenerator


class SlowRandom(RandomGenerator):
    def __init__(self, delay: float = 0.2, **kw):
        super().__init__(**kw)
        self.delay = delay

    def generate(self, chats, params):
        time.sleep(self.delay)
        return super().generate(chats, params)


@register("slow")
def _build(spec, name):
    return SlowRandom(name=name, **spec.options)


if __name__ == "__main__":
    from debate_lightning.tournament.cli import tournament_main

    sys.exit(tournament_main(sys.argv[1:]))
