"""The dashboard as a user drives it: Debian's Chromium against a real
`slapos up` whose node deploys what the form requests."""

import json
import re
import urllib.request

from playwright.sync_api import expect

from conftest import screenshot

DEPLOY = 120_000  # ms: install of the hello release plus deployment


def row(page, title):
    return page.locator(f'#instances tbody tr[data-title="{title}"]')


def wait_status(page, title, status, timeout=DEPLOY):
    """Waits for the instance list (refreshed live by the page itself) to show `status`."""
    expect(row(page, title)).to_have_attribute("data-status", status, timeout=timeout)


def test_request_stop_start_destroy(page, up):
    hello = up.hello_url()
    page.goto("/instances")
    expect(page.locator("h1")).to_have_text("Instances")
    page.click("text=Request an instance")

    page.fill("#software_release", hello)
    page.fill("#title", "browser-hello")
    page.fill("#instance_xml",
              '<?xml version="1.0" encoding="utf-8"?>\n<instance>\n'
              '  <parameter id="greeting">Hi from the browser</parameter>\n</instance>')
    screenshot(page, "request-form")
    page.click("#submit-request")

    # The form leads to the instance's page, which fills in as the node works.
    expect(page.locator("h1")).to_contain_text("browser-hello")
    expect(page.locator("#parameters")).to_contain_text("Hi from the browser")
    expect(page.locator("#connection")).to_contain_text("url", timeout=DEPLOY)
    url = page.locator("#connection code").first.inner_text()
    assert urllib.request.urlopen(url, timeout=10).read().decode().startswith("Hi from the browser")
    expect(page.locator("#status .badge")).to_have_text("started", timeout=DEPLOY)
    expect(page.locator("#promises")).to_contain_text("http")
    expect(page.locator("#history")).to_contain_text("request")
    screenshot(page, "instance")

    page.goto("/instances")
    wait_status(page, "browser-hello", "started")
    expect(page.locator("#events")).to_contain_text("browser-hello")
    screenshot(page, "instances")

    row(page, "browser-hello").locator('[data-action="stopped"]').click()
    expect(row(page, "browser-hello")).to_have_attribute("data-requested", "stopped")
    wait_status(page, "browser-hello", "stopped")

    row(page, "browser-hello").locator('[data-action="started"]').click()
    expect(row(page, "browser-hello")).to_have_attribute("data-requested", "started")
    wait_status(page, "browser-hello", "started")

    row(page, "browser-hello").locator("text=Destroy").click()
    expect(page.locator("h1")).to_contain_text("Destroy browser-hello?")
    page.click("#confirm-destroy")
    # Back on the list: the instance is being destroyed, then the node has
    # wiped its partition and it leaves the list; the feed says so.
    expect(page).to_have_url(re.compile(r"/instances$"))
    expect(row(page, "browser-hello")).to_have_count(0, timeout=DEPLOY)
    expect(page.locator("#events")).to_contain_text("instance.destroyed")
    page.goto("/computers/local")
    expect(page.locator("#partitions")).not_to_contain_text("browser-hello")
    screenshot(page, "computer")


def test_bad_parameter_shows_next_to_its_field(page, up):
    page.goto("/request")
    page.fill("#software_release", up.hello_url())
    page.fill("#title", "bad-greeting")
    # The hello release's schema allows at most 200 characters.
    too_long = json.dumps({"greeting": "x" * 201})
    page.fill("#instance_json", too_long)
    page.click("#submit-request")
    error = page.locator("#error-instance_json")
    expect(error).to_contain_text("greeting")
    # The form comes back as it was filled in, and nothing was requested.
    expect(page.locator("#title")).to_have_value("bad-greeting")
    expect(page.locator("#instance_json")).to_have_value(too_long)
    expect(page.locator("#instance_json")).to_have_attribute("aria-invalid", "true")
    screenshot(page, "request-error")
    page.goto("/instances?q=bad-greeting")
    expect(page.locator("#total")).to_have_text("0")


def test_hostile_title_is_text_not_markup(page, up):
    title = '<img src=x onerror="document.title=1">'
    page.goto("/request")
    page.fill("#software_release", up.hello_url())
    page.fill("#title", title)
    page.click("#submit-request")
    # Either refused as a reference or shown as plain text: never markup.
    page.goto("/instances")
    assert page.locator("#instances img").count() == 0
    assert page.title() != "1"


def test_software_and_computers_pages(page, up):
    page.goto("/software")
    expect(page.locator("main")).to_contain_text("hello")
    screenshot(page, "software")
    page.goto("/computers")
    expect(page.locator("main")).to_contain_text("local")
    page.click("text=local")
    expect(page.locator("#partitions tbody tr")).to_have_count(4)
