/* Two <video> elements driven as one: shared play/pause, seek, loop, speed and frame step.
 *
 * The left video leads; the right one follows. Each animation frame the follower's drift
 * (its time minus the leader's, taken across a loop's wrap) is measured: beyond one frame it
 * is seeked to the leader, beyond a quarter frame its playback rate is nudged (at most ±20 %)
 * so that it closes the gap in about half a second, and inside an eighth of a frame it plays
 * at the leader's rate. The target is a drift well under one frame.
 */
"use strict";

(function () {
  const FALLBACK_FPS = 8; // the project's sampling default, used when the server cannot say

  class SyncPlayer {
    constructor(leader, follower, { onTick = () => {}, onState = () => {} } = {}) {
      this.leader = leader;
      this.follower = follower;
      this.onTick = onTick;
      this.onState = onState;
      this.rate = 1;
      this.loop = true;
      this.playing = false;
      this.fps = FALLBACK_FPS;
      this.maxDrift = 0; // the largest drift seen since load, in seconds (for tests and logs)
      this._raf = null;
      this._tick = this._tick.bind(this);
      leader.addEventListener("ended", () => {
        if (!this.loop) this.pause();
      });
    }

    /** Frame duration in seconds: of the faster video, so that a step changes a frame. */
    get frameDuration() {
      return 1 / this.fps;
    }

    get duration() {
      const d = this.leader.duration;
      return Number.isFinite(d) && d > 0 ? d : 0;
    }

    get currentTime() {
      return this.leader.currentTime;
    }

    /** Load both videos; resolves once both can show their first frame. */
    load(left, right) {
      this.pause();
      this.fps = Math.max(left.fps || 0, right.fps || 0) || FALLBACK_FPS;
      this.maxDrift = 0;
      const ready = [this.leader, this.follower].map(
        (video) =>
          new Promise((resolve, reject) => {
            const done = () => {
              video.removeEventListener("loadeddata", done);
              video.removeEventListener("error", failed);
              resolve();
            };
            const failed = () => {
              video.removeEventListener("loadeddata", done);
              video.removeEventListener("error", failed);
              reject(new Error("a video could not be loaded"));
            };
            video.addEventListener("loadeddata", done);
            video.addEventListener("error", failed);
          }),
      );
      this.leader.src = left.url;
      this.follower.src = right.url;
      for (const video of [this.leader, this.follower]) {
        video.loop = this.loop;
        video.playbackRate = this.rate;
        video.load();
      }
      return Promise.all(ready).then(() => this._notify());
    }

    play() {
      this.follower.currentTime = this.leader.currentTime;
      this.playing = true;
      const started = [this.leader.play(), this.follower.play()];
      this._startLoop();
      this._notify();
      return Promise.all(started).catch((error) => {
        this.pause();
        throw error;
      });
    }

    pause() {
      this.playing = false;
      this.leader.pause();
      this.follower.pause();
      this.follower.playbackRate = this.rate;
      if (this.leader.readyState > 0) this.follower.currentTime = this.leader.currentTime;
      this._notify();
    }

    toggle() {
      return this.playing ? Promise.resolve(this.pause()) : this.play();
    }

    /** Both videos to `seconds` (clamped to the leader's length). */
    seek(seconds) {
      const t = Math.min(Math.max(seconds, 0), this.duration);
      this.leader.currentTime = t;
      this.follower.currentTime = t;
      this._notify();
    }

    /** Pause and move `frames` frames (±1); lands mid-frame, so that both show one frame. */
    step(frames) {
      this.pause();
      const dt = this.frameDuration;
      const last = Math.max(Math.ceil(this.duration / dt) - 1, 0);
      const index = Math.min(Math.max(Math.floor(this.leader.currentTime / dt) + frames, 0), last);
      this.seek((index + 0.5) * dt);
    }

    setRate(rate) {
      this.rate = rate;
      this.leader.playbackRate = rate;
      this.follower.playbackRate = rate;
      this._notify();
    }

    setLoop(loop) {
      this.loop = loop;
      this.leader.loop = loop;
      this.follower.loop = loop;
      this._notify();
    }

    /** The follower's drift in seconds, across a loop's wrap (−duration/2 … duration/2). */
    drift() {
      let d = this.follower.currentTime - this.leader.currentTime;
      const length = this.duration;
      if (this.loop && length > 0) {
        if (d > length / 2) d -= length;
        if (d < -length / 2) d += length;
      }
      return d;
    }

    _startLoop() {
      if (this._raf === null) this._raf = requestAnimationFrame(this._tick);
    }

    _tick() {
      this._raf = null;
      if (this.playing && !this.leader.seeking && !this.follower.seeking) this._correct();
      this._notify();
      if (this.playing) this._startLoop();
    }

    _correct() {
      if (this.follower.ended && !this.loop) return;
      const d = this.drift();
      const frame = this.frameDuration;
      this.maxDrift = Math.max(this.maxDrift, Math.abs(d));
      if (Math.abs(d) > frame) {
        this.follower.currentTime = this.leader.currentTime;
        this.follower.playbackRate = this.rate;
      } else if (Math.abs(d) > frame / 4) {
        const nudge = Math.min(Math.max(-d / 0.5, -0.2), 0.2);
        this.follower.playbackRate = this.rate * (1 + nudge);
      } else if (Math.abs(d) < frame / 8) {
        this.follower.playbackRate = this.rate;
      }
      if (this.follower.paused && !this.leader.paused) this.follower.play().catch(() => {});
    }

    _notify() {
      this.onTick(this.leader.currentTime, this.duration);
      this.onState(this);
    }
  }

  window.SyncPlayer = SyncPlayer;
})();
