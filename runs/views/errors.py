"""Error pages without tracebacks: a short sentence and a way back."""

from django.shortcuts import render


def _page(request, status: int, title: str, text: str):
    if request.path.startswith("/api/"):
        from django.http import JsonResponse

        return JsonResponse({"error": text}, status=status)
    return render(request, "error.html", {"title": title, "text": text}, status=status)


def bad_request(request, exception=None):
    from runs.text import NulRefused

    if isinstance(exception, NulRefused):  # names the fields to fix
        return _page(request, 400, "Bad request", f"{exception} Go back and check the form.")
    return _page(request, 400, "Bad request", "The request could not be understood. Go back and check the form.")


def forbidden(request, exception=None):
    return _page(
        request, 403, "Not allowed", "Your role does not allow this action. Ask an admin for the operator role."
    )


def not_found(request, exception=None):
    return _page(request, 404, "Not found", "There is nothing at this address. It may have been removed.")


def server_error(request):
    return _page(
        request, 500, "Something went wrong", "The error was logged. Try again, or tell an admin what you did."
    )
