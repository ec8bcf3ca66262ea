// token-broker console: the only script. Shows <time datetime> values in the
// viewer's time zone; the UTC value stays in the element's title (hover).
"use strict";
document.querySelectorAll("time[datetime]").forEach(function (el) {
  var d = new Date(el.getAttribute("datetime"));
  if (!isNaN(d.getTime())) {
    el.textContent = d.toLocaleString(undefined, {
      year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
    });
  }
});
