from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from streaming.api_keys import create_api_key, expiry_in, may_use_api_keys
from streaming.models import ApiKey

DEFAULT_NAME = "created by manage.py"


class Command(BaseCommand):
    help = (
        "Create a personal API key for USERNAME and print it. The last line of the output is the key alone; "
        "it is shown only this once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default=DEFAULT_NAME, help=f'What the key is for (default: "{DEFAULT_NAME}").')
        parser.add_argument(
            "--expires-days", type=int, default=None, help="Days until the key expires (default: it never does)."
        )

    def handle(self, *args, username: str, name: str, expires_days: int | None, **options) -> None:
        users = get_user_model()._default_manager
        try:
            user = users.get_by_natural_key(username)
        except users.model.DoesNotExist:
            raise CommandError(f"There is no user {username!r}.") from None
        if not user.is_active:
            raise CommandError(f"The user {username!r} is inactive; an inactive user's keys are refused.")
        name = name.strip()
        max_length = ApiKey._meta.get_field("name").max_length or 0
        if not name or len(name) > max_length:
            raise CommandError(f"--name must be 1 to {max_length} characters.")
        try:
            expires_at = expiry_in(expires_days)
        except OverflowError:
            expires_at = None
        if expires_days is not None and (expires_days < 1 or expires_at is None):
            raise CommandError("--expires-days must be a whole number of days, 1 or more (and before the year 10000).")
        try:
            key, full_key = create_api_key(user=user, name=name, expires_at=expires_at)
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        if not may_use_api_keys(user):
            self.stderr.write(
                f"Note: {username!r} lacks the streaming.use_api_keys permission, which this site requires: "
                "the key is refused until the user is given it."
            )
        expiry = f"expires {key.expires_at:%Y-%m-%d %H:%M %Z}" if key.expires_at else "never expires"
        self.stdout.write(f"Created API key {key.public_id} ({key.name}) for {username}; it {expiry}:")
        self.stdout.write(full_key)
