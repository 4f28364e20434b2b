// gdx paint: plain JS, no build step. Strokes are kept here; every change re-sends them all
// (undo = drop the last one), so the server stays stateless.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var state = {
    info: null, sample: 0, photo: null, photoImage: null, firstSample: 0, concept: null, strokes: [], seq: 0, shown: 0,
    drawing: false, points: []
  };
  var image = $("image"), brush = $("brush"), ctx = brush.getContext("2d");
  var DISPLAY = 512;
  brush.width = DISPLAY; brush.height = DISPLAY;

  function status(text) { $("status").textContent = text; }

  function mode() { return document.querySelector("input[name=mode]:checked").value; }

  function api(path, body) {
    var opts = body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
    };
    return fetch(path, opts).then(function (r) {
      return r.json().then(function (data) {
        if (!r.ok) { throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)); }
        return data;
      });
    });
  }

  function showSample(id) {
    state.sample = id; state.photo = null; state.strokes = [];
    ctx.clearRect(0, 0, DISPLAY, DISPLAY);
    var src = "api/sample/" + id + ".png";
    image.src = src; $("download").href = src;
    document.querySelectorAll("#samples img").forEach(function (img) {
      img.classList.toggle("selected", Number(img.dataset.sample) === id);
    });
    status("sample " + id);
  }

  function fillGrid(start) {
    var grid = $("samples"); grid.innerHTML = "";
    state.firstSample = start;
    for (var i = 0; i < 12; i++) {
      var img = document.createElement("img");
      var id = start + i;
      img.src = "api/sample/" + id + ".png"; img.alt = "sample " + id; img.dataset.sample = String(id);
      img.addEventListener("click", function (e) { showSample(Number(e.target.dataset.sample)); });
      grid.appendChild(img);
    }
  }

  function pickConcept(name) {
    state.concept = name;
    document.querySelectorAll("#concepts button").forEach(function (b) {
      b.classList.toggle("active", b.dataset.concept === name);
    });
  }

  function brushRadius() { return Number($("brush-size").value) / 2; }

  function toCanvas(e) {
    var rect = brush.getBoundingClientRect();
    return { x: (e.clientX - rect.left) * DISPLAY / rect.width, y: (e.clientY - rect.top) * DISPLAY / rect.height };
  }

  // Draw a round-capped polyline; (sx, sy) map display pixels to the target canvas (the
  // display is square, the image need not be).
  function strokePath(c, points, sx, sy, radius) {
    c.save();
    c.scale(sx, sy);
    c.lineCap = "round"; c.lineJoin = "round"; c.lineWidth = 2 * radius;
    c.beginPath();
    c.moveTo(points[0].x, points[0].y);
    points.forEach(function (p) { c.lineTo(p.x, p.y); });
    if (points.length === 1) { c.lineTo(points[0].x + 0.01, points[0].y); }
    c.stroke();
    c.restore();
  }

  // Rasterise the stroke at the image's own size and pack it MSB-first, row-major (numpy packbits).
  function maskOf(points, radius) {
    var w = state.info.image_size[1], h = state.info.image_size[0];
    var off = document.createElement("canvas"); off.width = w; off.height = h;
    var c = off.getContext("2d");
    c.strokeStyle = "#000";
    strokePath(c, points, w / DISPLAY, h / DISPLAY, radius);
    var alpha = c.getImageData(0, 0, w, h).data;
    var bytes = new Uint8Array(Math.ceil(w * h / 8));
    for (var i = 0; i < w * h; i++) {
      if (alpha[4 * i + 3] > 0) { bytes[i >> 3] |= 0x80 >> (i & 7); }
    }
    var text = "";
    for (var j = 0; j < bytes.length; j++) { text += String.fromCharCode(bytes[j]); }
    return { width: w, height: h, bits: btoa(text) };
  }

  // Strokes are shown faintly once the image has been painted, so the result stays visible.
  function redrawOverlay(alpha) {
    ctx.clearRect(0, 0, DISPLAY, DISPLAY);
    state.strokes.forEach(function (s) {
      ctx.strokeStyle = s.mode === "draw" ? "rgba(255,111,0," + alpha + ")" : "rgba(0,120,255," + alpha + ")";
      strokePath(ctx, s.points, 1, 1, s.radius);
    });
  }

  function render() {
    var seq = ++state.seq;
    redrawOverlay(0.25);
    if (!state.strokes.length) { showSampleKeepStrokes(); return Promise.resolve(); }
    var body = {
      sample: state.photo ? 0 : state.sample, photo: state.photo, units: Math.max(1, Math.min(state.info.max_units, Number($("units").value) || 1)),
      strokes: state.strokes.map(function (s) { return { concept: s.concept, mode: s.mode, mask: s.mask }; })
    };
    status("painting…");
    var t0 = performance.now();
    return api("api/edit", body).then(function (out) {
      if (seq !== state.seq) { return; }
      image.src = out.image; $("download").href = out.image;
      state.shown = seq;
      redrawOverlay(0.07);
      status(state.strokes.length + " stroke(s), " + Math.round(performance.now() - t0) + " ms (server " +
             out.milliseconds.toFixed(1) + " ms)");
      image.dataset.seq = String(seq);
    }).catch(function (err) { status("error: " + err.message); });
  }

  function showSampleKeepStrokes() {
    var src = state.photo ? state.photoImage : "api/sample/" + state.sample + ".png";
    image.src = src; $("download").href = src; image.dataset.seq = String(state.seq);
    status(state.photo ? "photo " + state.photo : "sample " + state.sample);
  }

  // A photo is inverted into the generator by the server (a few seconds); it then becomes the
  // canvas, and strokes, undo, reset and download work on it as on a sample.
  function showPhoto(out) {
    state.photo = out.photo; state.photoImage = out.image; state.strokes = []; state.seq++;
    ctx.clearRect(0, 0, DISPLAY, DISPLAY);
    document.querySelectorAll("#samples img").forEach(function (img) { img.classList.remove("selected"); });
    showSampleKeepStrokes();
    status("photo " + out.photo + (isFinite(out.psnr) ? " (reconstruction PSNR " + out.psnr.toFixed(1) + " dB)" : ""));
    image.dataset.photo = out.photo;
  }

  function openFile(file) {
    if (!file) { return; }
    if (file.type !== "image/png" && file.type !== "image/jpeg") { status("error: choose a PNG or JPEG image"); return; }
    status("inverting " + file.name + "…");
    fetch("api/photo", { method: "POST", headers: { "Content-Type": file.type }, body: file }).then(function (r) {
      return r.json().then(function (data) {
        if (!r.ok) { throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)); }
        return data;
      });
    }).then(showPhoto).catch(function (err) { status("error: " + err.message); });
  }

  brush.addEventListener("pointerdown", function (e) {
    if (!state.concept) { status("pick a concept first"); return; }
    state.drawing = true; state.points = [toCanvas(e)];
    brush.setPointerCapture(e.pointerId);
  });
  brush.addEventListener("pointermove", function (e) {
    if (!state.drawing) { return; }
    var p = toCanvas(e); state.points.push(p);
    ctx.strokeStyle = mode() === "draw" ? "rgba(255,111,0,0.25)" : "rgba(0,120,255,0.25)";
    strokePath(ctx, state.points.slice(-2), 1, 1, brushRadius());
  });
  function finish() {
    if (!state.drawing) { return; }
    state.drawing = false;
    if (state.strokes.length >= state.info.max_strokes) { status("too many strokes: undo or reset"); return; }
    var radius = brushRadius();
    state.strokes.push({ concept: state.concept, mode: mode(), points: state.points, radius: radius,
                         mask: maskOf(state.points, radius) });
    render();
  }
  brush.addEventListener("pointerup", finish);
  brush.addEventListener("pointercancel", finish);

  $("undo").addEventListener("click", function () { state.strokes.pop(); render(); });
  $("reset").addEventListener("click", function () { state.strokes = []; render(); });
  $("new-sample").addEventListener("click", function () {
    showSample(Math.floor(Math.random() * 1000000));
  });
  $("open-image").addEventListener("click", function () { $("image-file").click(); });
  $("image-file").addEventListener("change", function (e) { openFile(e.target.files[0]); e.target.value = ""; });
  $("more-samples").addEventListener("click", function () { fillGrid(state.firstSample + 12); });
  $("units").addEventListener("change", function () { if (state.strokes.length) { render(); } });
  $("brush-size").addEventListener("input", function () { $("brush-size-value").textContent = $("brush-size").value + " px"; });
  $("brush-size-value").textContent = $("brush-size").value + " px";

  api("api/info").then(function (info) {
    state.info = info;
    $("model").textContent = info.generator + " · layer " + info.layer + " · " + info.units + " units · " +
      info.image_size[1] + "×" + info.image_size[0];
    $("units").max = String(info.max_units); $("units").value = String(info.default_units);
    var box = $("concepts");
    info.concepts.forEach(function (c) {
      var b = document.createElement("button");
      b.type = "button"; b.textContent = c.name; b.dataset.concept = c.name;
      b.title = c.category + ": " + c.units.length + " units ranked by " + c.method + " (best IoU " +
        c.ious[0].toFixed(3) + ")";
      b.addEventListener("click", function () { pickConcept(c.name); });
      box.appendChild(b);
    });
    if (info.concepts.length) { pickConcept(info.concepts[0].name); }
    fillGrid(0);
    if (info.photo) {
      showPhoto({ photo: info.photo, image: "api/photo/" + info.photo + ".png", psnr: NaN });
    } else {
      showSample(0);
    }
    document.body.dataset.ready = "1";
  }).catch(function (err) { status("error: " + err.message); });
}());
