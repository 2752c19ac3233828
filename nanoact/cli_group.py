"""How the ``nanoact`` command reports a user's error: through click, as one ``error:`` line and exit code 2.

Library code raises ``NanoactError`` (or a storage failure the user must fix: a full or read-only disk or
database). ``NanoactGroup.invoke`` turns either into a ``UserError``, a ``click.ClickException`` that click
shows and exits with, in the terminal and under ``click.testing.CliRunner`` alike (as flask's
``NoAppException(click.UsageError)`` does). Every store a command was given is recorded in ``ctx.meta``
(``remember_store``, ``store_uri``) so that its password is masked in the message. Bugs keep their traceback.
"""

from __future__ import annotations

import click

from nanoact.errors import NanoactError

STORES = "nanoact.stores"  # ctx.meta key: the store URLs this invocation was given, newest last
SET_HELP = "Override a config key, e.g. --set train.max_iters=200 (repeatable)."  # every command with --set


class UserError(click.ClickException):
    """An error the user can fix: one ``error: ...`` line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=file is None)


def remember_store(url: str | None) -> None:
    """Record a store URL (MLflow, Optuna storage, database) whose password must never be printed."""
    if url:
        click.get_current_context().meta.setdefault(STORES, []).append(url)


def store_uri(tracking_uri: str | None) -> str:
    """Resolve the tracking URI; credentials in an http(s) URI move to MLflow's env vars (never into MLflow's
    own messages, run links or tags)."""
    from nanoact.tracking_uri import move_credentials_to_env, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    remember_store(uri)
    return move_credentials_to_env(uri)


class NanoactGroup(click.Group):
    """A group whose commands' ``NanoactError``s (and storage failures) become ``UserError``s, passwords masked."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except NanoactError as e:
            raise _user_error(ctx, e) from e
        except Exception as e:  # a read-only or full disk or database is the user's to fix: one line, no traceback
            from nanoact.errors import storage_error
            from nanoact.tracking_uri import display_url

            stores = ctx.meta.get(STORES, [])
            err = storage_error(e, display_url(stores[-1]) if stores else "")
            if err is None:
                raise
            raise _user_error(ctx, err) from e


def _user_error(ctx: click.Context, e: Exception) -> UserError:
    from nanoact.tracking_uri import redact

    return UserError(redact(" ".join(str(e).split()), *ctx.meta.get(STORES, [])))
