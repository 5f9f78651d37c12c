// oncely dashboard: the little behaviour the pages need. No framework, no build step.
(function () {
  "use strict";
  var KEY = "oncely.autoRefresh";
  var box = document.getElementById("auto-refresh");
  var timer = null;

  function schedule() {
    if (timer) { clearTimeout(timer); timer = null; }
    if (box && box.checked) {
      timer = setTimeout(function () { window.location.reload(); }, 10000);
    }
  }

  if (box) {
    box.checked = window.localStorage.getItem(KEY) === "1";
    box.addEventListener("change", function () {
      window.localStorage.setItem(KEY, box.checked ? "1" : "0");
      schedule();
    });
    schedule();
  }

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });
})();
