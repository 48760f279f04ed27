// The dashboard's only script: reveals masked secrets, and keeps the
// "Last Event" panel and the page's live region up to date from the
// master's event stream. Every page works without it.
"use strict";

function bindReveal(root) {
  root.querySelectorAll(".secret .reveal").forEach(function (button) {
    button.addEventListener("click", function () {
      var box = button.closest(".secret");
      var shown = box.querySelector(".revealed");
      var masked = box.querySelector(".masked");
      var reveal = shown.hidden;
      shown.hidden = !reveal;
      masked.hidden = reveal;
      button.textContent = reveal ? "Hide" : "Reveal";
    });
  });
}

function eventEntry(e) {
  var li = document.createElement("li");
  li.className = "event " + e.kind_class;
  var time = document.createElement("time");
  time.textContent = e.at;
  var kind = document.createElement("b");
  kind.textContent = e.kind;
  li.append(time, kind, " ");
  var text = e.instance_id ? document.createElement("a") : document.createElement("span");
  if (e.instance_id) text.href = "/instances/" + encodeURIComponent(e.instance_id);
  text.textContent = e.message;
  li.append(text);
  return li;
}

var refreshing = false, refreshAgain = false;

// Re-reads this page and swaps its live region, unless the user is typing in it.
function refreshLive() {
  var live = document.getElementById("live");
  if (!live || live.contains(document.activeElement) && document.activeElement.tagName !== "BODY") return;
  if (refreshing) { refreshAgain = true; return; }
  refreshing = true;
  fetch(location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
    .then(function (r) { return r.ok ? r.text() : null; })
    .then(function (html) {
      if (!html) return;
      var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
      if (fresh) { live.replaceChildren.apply(live, Array.from(fresh.childNodes)); bindReveal(live); }
    })
    .finally(function () {
      refreshing = false;
      if (refreshAgain) { refreshAgain = false; setTimeout(refreshLive, 300); }
    });
}

document.addEventListener("DOMContentLoaded", function () {
  bindReveal(document);
  var list = document.getElementById("events");
  if (!list || !window.EventSource) return;
  var dot = document.getElementById("live-dot");
  // Resume after the newest event this page was rendered with: a change made
  // between the page's rendering and this connection is not missed.
  var source = new EventSource("/events/stream?after=" + encodeURIComponent(document.body.dataset.after || "0"));
  var timer = null;
  source.onopen = function () { if (dot) dot.classList.add("on"); };
  source.onerror = function () { if (dot) dot.classList.remove("on"); };
  source.addEventListener("slapos", function (message) {
    var e = JSON.parse(message.data);
    var empty = list.querySelector(".empty");
    if (empty) empty.remove();
    list.prepend(eventEntry(e));
    while (list.children.length > 10) list.lastElementChild.remove();
    if (document.body.dataset.live) {
      clearTimeout(timer);
      timer = setTimeout(refreshLive, 250);
    }
  });
});
