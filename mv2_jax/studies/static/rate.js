/* The rating page: asks /api/next for the rater's current pair, plays it with SyncPlayer,
 * collects one vote per criterion (clicks or keys) and posts them to /api/vote. The server
 * is the source of truth: a reload asks /api/next again and lands on the same pair.
 */
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const token = new URLSearchParams(window.location.search).get("token") || "";
  const criteriaHelp = JSON.parse($("criteria-help").textContent || "{}");
  const DIGIT_ROWS = ["123", "456", "789"]; // digit shortcuts of the first three criteria
  const ARROWS = { ArrowLeft: "left", ArrowDown: "same", ArrowRight: "right" };
  const MESSAGES = {
    401: "This invitation link is not valid, or it has been withdrawn. Ask the study's " +
      "organiser for a new one.",
    403: "This pair belongs to another rater. Reload the page to get your own.",
    413: "The page sent too much data. Reload the page and try again.",
  };

  let assignment = null; // the pair on screen, as /api/next gave it
  let votes = {}; // criterion → "left" | "same" | "right"
  let active = 0; // the criterion row that arrow keys vote on
  let busy = false;
  let retryAction = null;
  let scrubbing = false; // while the rater drags the scrubber, playback does not move it

  const player = new window.SyncPlayer($("video-left"), $("video-right"), {
    onTick: showTime,
    onState: (p) => {
      $("play").textContent = p.playing ? "Pause" : "Play";
      $("play").setAttribute("aria-pressed", String(p.playing));
    },
  });
  window.mv2Player = player; // for the browser test and for curious raters' consoles

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { cache: "no-store", ...options });
    } catch (error) {
      throw new ApiError(0, "The server cannot be reached. Check your connection; the " +
        "votes you sent are saved.");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && body.error ? body.error : response.statusText;
      throw new ApiError(response.status, MESSAGES[response.status] || detail);
    }
    return body;
  }

  function showError(message, retry = null) {
    $("status-text").textContent = message;
    $("status").hidden = false;
    retryAction = retry;
    $("retry").hidden = retry === null;
  }

  function clearError() {
    $("status").hidden = true;
    retryAction = null;
  }

  function showTime(seconds, duration) {
    $("clock").textContent = `${seconds.toFixed(2)} s / ${duration.toFixed(2)} s`;
    if (!scrubbing && duration > 0) {
      $("scrubber").value = String(Math.round((seconds / duration) * 1000));
    }
  }

  async function loadNext() {
    busy = true;
    clearError();
    try {
      const next = await api(`/api/next?token=${encodeURIComponent(token)}`);
      $("loading").hidden = true;
      if (next.finished) showFinished(next);
      else await showAssignment(next);
    } catch (error) {
      $("loading").hidden = true;
      const fatal = error.status === 401;
      showError(error.message, fatal ? null : loadNext);
    } finally {
      busy = false;
      updateNext();
    }
  }

  function showFinished(summary) {
    player.pause();
    assignment = null;
    $("study").hidden = true;
    $("finished").hidden = false;
    $("finished-text").textContent = `You have rated all ${summary.total} pairs. ` +
      `${summary.done} of ${summary.total} done.`;
  }

  async function showAssignment(next) {
    assignment = next;
    votes = {};
    active = 0;
    $("finished").hidden = true;
    $("study").hidden = false;
    $("prompt").textContent = next.prompt;
    $("progress-text").textContent = `${next.done + 1} of ${next.total}`;
    $("progress-bar").max = next.total;
    $("progress-bar").value = next.done;
    buildCriteria(next.criteria);
    try {
      await player.load(next.left, next.right);
    } catch (error) {
      showError("A video could not be loaded. Reload the page; if it keeps failing, tell " +
        "the study's organiser.", loadNext);
      return;
    }
    for (const side of ["left", "right"]) {
      const video = $(`video-${side}`);
      $(`size-${side}`).textContent = `${video.videoWidth}×${video.videoHeight}`;
    }
    sizeVideos();
    player.play().catch(() => {}); // autoplay (muted) may be refused; Play still works
  }

  function buildCriteria(names) {
    const box = $("criteria");
    box.replaceChildren();
    names.forEach((name, index) => {
      const row = $("criterion-template").content.firstElementChild.cloneNode(true);
      row.dataset.criterion = name;
      row.querySelector(".criterion-name").textContent =
        name.charAt(0).toUpperCase() + name.slice(1);
      row.querySelector(".criterion-help").textContent = criteriaHelp[name] || "";
      const keys = index < DIGIT_ROWS.length ? `keys ${DIGIT_ROWS[index].split("").join(" ")}` : "";
      row.querySelector(".keys").textContent = keys;
      for (const button of row.querySelectorAll("button[data-vote]")) {
        button.addEventListener("click", () => castVote(index, button.dataset.vote));
      }
      row.addEventListener("focusin", () => setActive(index));
      box.appendChild(row);
    });
    setActive(0);
  }

  function rows() {
    return Array.from($("criteria").querySelectorAll("fieldset.criterion"));
  }

  function setActive(index) {
    const all = rows();
    active = Math.min(Math.max(index, 0), all.length - 1);
    all.forEach((row, i) => row.classList.toggle("active", i === active));
  }

  function castVote(index, vote) {
    if (!assignment) return;
    const row = rows()[index];
    if (!row) return;
    votes[row.dataset.criterion] = vote;
    for (const button of row.querySelectorAll("button[data-vote]")) {
      button.setAttribute("aria-pressed", String(button.dataset.vote === vote));
    }
    row.classList.add("answered");
    const unanswered = rows().findIndex((r) => !(r.dataset.criterion in votes));
    setActive(unanswered === -1 ? index : unanswered);
    updateNext();
  }

  function complete() {
    return assignment !== null && assignment.criteria.every((name) => name in votes);
  }

  function updateNext() {
    $("next").disabled = busy || !complete();
    $("next-hint").hidden = complete();
  }

  async function submit() {
    if (busy || !complete()) return;
    busy = true;
    updateNext();
    const body = { token, assignment_id: assignment.assignment_id, votes };
    try {
      await api("/api/vote", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    } catch (error) {
      busy = false;
      // 409: this pair was already voted (a double click, another tab): move on.
      if (error.status !== 409) {
        const retry = { 0: submit, 403: loadNext }[error.status] || null;
        showError(error.message, retry);
        updateNext();
        return;
      }
    }
    await loadNext();
  }

  // ------------------------------------------------------------------ controls and keys
  $("play").addEventListener("click", () => player.toggle().catch(() => {}));
  $("frame-back").addEventListener("click", () => player.step(-1));
  $("frame-forward").addEventListener("click", () => player.step(1));
  $("scrubber").addEventListener("pointerdown", () => { scrubbing = true; });
  $("scrubber").addEventListener("pointerup", () => { scrubbing = false; });
  $("scrubber").addEventListener("input", (event) => {
    player.seek((Number(event.target.value) / 1000) * player.duration);
  });
  $("loop").addEventListener("change", (event) => player.setLoop(event.target.checked));
  $("full-resolution").addEventListener("change", (event) => setFullResolution(event.target.checked));
  for (const button of document.querySelectorAll("button[data-speed]")) {
    button.addEventListener("click", () => setSpeed(Number(button.dataset.speed)));
  }
  $("votes").addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  $("retry").addEventListener("click", () => retryAction && retryAction());

  function setSpeed(rate) {
    player.setRate(rate);
    for (const button of document.querySelectorAll("button[data-speed]")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.speed) === rate));
    }
  }

  function setFullResolution(on) {
    $("full-resolution").checked = on;
    $("stage").classList.toggle("full", on);
    $("stage").classList.toggle("fit", !on);
    sizeVideos();
  }

  /** Full resolution is one video pixel per screen pixel, also on high-density screens. */
  function sizeVideos() {
    const full = $("full-resolution").checked;
    for (const video of [$("video-left"), $("video-right")]) {
      const width = video.videoWidth / (window.devicePixelRatio || 1);
      video.style.width = full && width > 0 ? `${width}px` : "";
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || !assignment) return;
    const key = event.key;
    const target = event.target;
    // Leave a focused control its own keys: arrows move the scrubber, Space ticks a box.
    if (target.tagName === "SELECT" || target.tagName === "TEXTAREA") return;
    if (target.tagName === "INPUT") {
      if (target.type === "range" && key.startsWith("Arrow")) return;
      if (target.type === "checkbox" && key === " ") return;
      if (target.type !== "range" && target.type !== "checkbox") return;
    }
    const digitRow = DIGIT_ROWS.findIndex((keys) => keys.includes(key));
    if (digitRow !== -1 && digitRow < rows().length) {
      castVote(digitRow, ["left", "same", "right"][DIGIT_ROWS[digitRow].indexOf(key)]);
    } else if (key in ARROWS) castVote(active, ARROWS[key]);
    else if (key === "ArrowUp") setActive(active - 1);
    else if (key === "Enter") submit();
    else if (key === " ") player.toggle().catch(() => {});
    else if (key === ",") player.step(-1);
    else if (key === ".") player.step(1);
    else if (key === "s" || key === "S") setSpeed(player.rate === 1 ? 0.5 : 1);
    else if (key === "l" || key === "L") {
      $("loop").checked = !player.loop;
      player.setLoop(!player.loop);
    } else if (key === "f" || key === "F") setFullResolution(!$("full-resolution").checked);
    else return;
    event.preventDefault();
  });

  if (!token) showError(MESSAGES[401]);
  else loadNext();
})();
