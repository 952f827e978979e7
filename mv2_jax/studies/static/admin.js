/* The admin page refreshes itself every 10 s while "Refresh" is ticked (remembered per tab),
 * so that progress and the live table can be watched during a study. */
"use strict";

(function () {
  const KEY = "mv2-admin-live";
  const box = document.getElementById("live");
  box.checked = sessionStorage.getItem(KEY) !== "off";
  box.addEventListener("change", () => sessionStorage.setItem(KEY, box.checked ? "on" : "off"));
  setInterval(() => {
    if (box.checked && document.visibilityState === "visible") window.location.reload();
  }, 10000);
})();
