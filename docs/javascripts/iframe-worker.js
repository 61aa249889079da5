/* Search on pages opened from their files (file://).

   The theme's search runs in a Web Worker, and browsers refuse `new Worker(url)` on a page opened from a file.
   On such pages this stand-in replaces `Worker`: it runs the worker's script in a hidden frame of the page, with
   the part of the worker API that script uses (messages both ways, `importScripts` as a promise). The theme's
   offline plugin would fetch a shim for this from the internet; this file ships with the site instead (its name
   tells the plugin a shim is present). Served over http(s), pages keep the real `Worker`. */
(function () {
  "use strict";
  if (location.protocol !== "file:") {
    return;
  }

  function loadScript(frame, url) {
    return new Promise(function (resolve, reject) {
      var script = frame.document.createElement("script");
      script.src = new URL(url, location.href).href;
      script.onload = function () { resolve(); };
      script.onerror = function () { reject(new Error("could not load " + script.src)); };
      frame.document.head.appendChild(script);
    });
  }

  class FrameWorker extends EventTarget {
    constructor(url) {
      super();
      var iframe = document.createElement("iframe");
      iframe.hidden = true;
      iframe.setAttribute("aria-hidden", "true");
      iframe.setAttribute("tabindex", "-1");
      (document.body || document.documentElement).appendChild(iframe);
      var frame = iframe.contentWindow;
      var page = this;
      this._iframe = iframe;
      this._frame = frame;
      this._queue = [];
      this._ready = false;
      this.onmessage = null;
      this.onerror = null;
      // the worker's globals: what it posts arrives here as a message event
      frame.postMessage = function (data) {
        setTimeout(function () { page._dispatch(new MessageEvent("message", { data: data })); }, 0);
      };
      frame.importScripts = function () {
        var urls = Array.prototype.slice.call(arguments);
        return urls.reduce(function (done, next) {
          return done.then(function () { return loadScript(frame, next); });
        }, Promise.resolve());
      };
      loadScript(frame, url).then(function () {
        page._ready = true;
        page._queue.splice(0).forEach(function (data) { page._deliver(data); });
      }, function (error) {
        page._dispatch(new ErrorEvent("error", { message: error.message, error: error }));
      });
    }

    _dispatch(event) {
      var handler = event.type === "message" ? this.onmessage : this.onerror;
      if (typeof handler === "function") {
        handler.call(this, event);
      }
      this.dispatchEvent(event);
    }

    _deliver(data) {
      var frame = this._frame;
      setTimeout(function () { frame.dispatchEvent(new frame.MessageEvent("message", { data: data })); }, 0);
    }

    postMessage(data) {
      if (this._ready) {
        this._deliver(data);
      } else {
        this._queue.push(data);
      }
    }

    terminate() {
      this._iframe.remove();
    }
  }

  window.Worker = FrameWorker;
})();
