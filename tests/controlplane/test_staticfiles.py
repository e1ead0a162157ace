"""Static files collected as `manage.py up` collects them: hashed and compressed, whatever the vendor files name."""

from django.core.files.base import ContentFile

from controlplane.staticfiles import StaticStorage


def test_a_stylesheet_naming_a_source_map_its_package_does_not_ship_is_still_collected(tmp_path):
    storage = StaticStorage(location=str(tmp_path), base_url="/static/")
    storage.save(
        "ninja/swagger-ui.css", ContentFile(b"body { color: red }\n/*# sourceMappingURL=swagger-ui.css.map */\n")
    )
    storage.save("img/dot.svg", ContentFile(b"<svg xmlns='http://www.w3.org/2000/svg'/>"))
    storage.save("css/app.css", ContentFile(b".x { background: url('../img/dot.svg') }\n"))
    found = {name: (storage, name) for name in ("ninja/swagger-ui.css", "img/dot.svg", "css/app.css")}
    results = list(storage.post_process(found))
    assert not [done for _, _, done in results if isinstance(done, Exception)]
    hashed = {name: h for name, h, _ in results}
    assert hashed["ninja/swagger-ui.css"] != "ninja/swagger-ui.css"  # hashed all the same
    css = (tmp_path / hashed["css/app.css"]).read_text()
    assert hashed["img/dot.svg"].split("/")[-1] in css  # url() references still point at hashed names
