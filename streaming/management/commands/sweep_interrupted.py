from django.core.management.base import BaseCommand, CommandParser

from streaming.usage import STALE_SECONDS, sweep_interrupted


class Command(BaseCommand):
    help = (
        "Settle as interrupted the usage rows left in progress by a server process that died (no sign of "
        f"life for {STALE_SECONDS} s): tokens estimated, costed, their budget reservations released. "
        "Run it every minute (deploy/chatproxy-sweep.timer, or cron)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stale-after",
            type=float,
            default=STALE_SECONDS,
            help=f"Seconds without a sign of life after which a stream counts as dead (default {STALE_SECONDS}).",
        )

    def handle(self, *args, stale_after: float, **options) -> None:
        settled = total = sweep_interrupted(stale_seconds=stale_after)
        while settled:  # in batches, until none is left
            settled = sweep_interrupted(stale_seconds=stale_after)
            total += settled
        self.stdout.write(f"{total} usage row{'' if total == 1 else 's'} settled as interrupted.")
