from datetime import date, datetime, time, timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from streaming.pricing import recompute_costs


class Command(BaseCommand):
    help = (
        "Recompute the cost of the usage rows made from --from to --to (dates, both included) from the "
        "prices as they stand now, after a price was corrected in the admin."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="first", required=True, type=_date, help="First day, YYYY-MM-DD.")
        parser.add_argument("--to", dest="last", required=True, type=_date, help="Last day, YYYY-MM-DD (included).")
        parser.add_argument("--model", default=None, help="Only the rows of this model.")

    def handle(self, *args, first: date, last: date, model: str | None, **options) -> None:
        if last < first:
            raise CommandError("--to must not be before --from.")
        since = timezone.make_aware(datetime.combine(first, time.min))
        until = timezone.make_aware(datetime.combine(last + timedelta(days=1), time.min))
        result = recompute_costs(since=since, until=until, model=model)
        self.stdout.write(
            f"{result.rows} usage rows from {first} to {last}: {result.changed} changed; "
            f"{result.missing} without a known price (cost left empty)."
        )


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a date (YYYY-MM-DD).") from None
