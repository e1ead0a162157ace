from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from runs.models import ApiToken
from runs.services.api_tokens import TokenRefused, api_token_create, api_token_revoke


class Command(BaseCommand):
    help = "Make, list or revoke a person's API tokens (for scripts and the cpctl client)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="make a token and print it (shown this once)")
        create.add_argument("username")
        create.add_argument("name", help="what the token is for, e.g. laptop")
        listing = sub.add_parser("list", help="a person's tokens")
        listing.add_argument("username")
        revoke = sub.add_parser("revoke", help="revoke a token by its id")
        revoke.add_argument("username")
        revoke.add_argument("token_id", type=int)

    def handle(self, *args, **options):
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"There is no user {options['username']!r}.")
        try:
            if options["action"] == "create":
                issued = api_token_create(user=user, name=options["name"], actor="manage.py api_token")
                self.stdout.write(issued.secret)
            elif options["action"] == "list":
                for token in ApiToken.objects.filter(user=user):
                    state = "revoked" if token.revoked_at else "active"
                    self.stdout.write(f"{token.pk}\t{token.prefix}...\t{state}\t{token.name}")
            else:
                revoked = ApiToken.objects.filter(pk=options["token_id"], user=user).first()
                if revoked is None:
                    raise CommandError(f"{user.username} has no token #{options['token_id']}.")
                api_token_revoke(token=revoked, actor="manage.py api_token")
                self.stdout.write(f"revoked token #{token.pk} ({token.name})")
        except TokenRefused as exc:
            raise CommandError(str(exc)) from None
