// The simdex lookup page: a query (file or StudyInstanceUID) -> POST /api/similar -> studies, series and hits.
// Every text from the server or the file goes into the page with textContent; nothing is ever parsed as HTML.
"use strict";

(function () {
  var $ = function (id) { return document.getElementById(id); };
  var config = {pacs: false, max_upload_bytes: 0};
  var previewUrl = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function setState(state, message) {
    document.body.dataset.state = state;
    $("status").textContent = message || "";
  }

  function score(x) {
    return Math.abs(x) < 1000 ? x.toFixed(4) : x.toPrecision(4);
  }

  function loadCollections() {
    return fetch("/api/collections").then(function (r) {
      if (!r.ok) throw new Error("collections: HTTP " + r.status);
      return r.json();
    }).then(function (doc) {
      config = doc;
      var sel = $("collection");
      sel.textContent = "";
      doc.collections.forEach(function (c) {
        var o = el("option", null, c.name + " (" + c.embedder + ", " + c.metric + ", " + c.count + ")");
        o.value = c.name;
        sel.appendChild(o);
      });
      $("study-field").hidden = !doc.pacs;
      if (!doc.collections.length) setState("error", "No collection with an image embedder on this server.");
    }).catch(function (e) { setState("error", String(e.message || e)); });
  }

  function showPreview(file) {
    var box = $("preview");
    box.textContent = "";
    if (previewUrl) { URL.revokeObjectURL(previewUrl); previewUrl = null; }
    if (file && /^image\/(png|jpeg)$/.test(file.type)) {
      previewUrl = URL.createObjectURL(file);
      var img = el("img");
      img.alt = "query image";
      img.src = previewUrl;
      box.appendChild(img);
    } else {
      box.appendChild(el("span", null, file ? "DICOM query (no preview in the browser)" : "study query"));
    }
  }

  function showQuery(doc) {
    var facts = $("facts");
    facts.textContent = "";
    var keys = Object.keys(doc.query);
    keys.forEach(function (k) {
      var tr = el("tr");
      tr.appendChild(el("th", null, k));
      tr.appendChild(el("td", null, Array.isArray(doc.query[k]) ? doc.query[k].join(" \\ ") : doc.query[k]));
      facts.appendChild(tr);
    });
    if (!keys.length) {
      var tr = el("tr");
      tr.appendChild(el("td", null, "an image without DICOM tags"));
      facts.appendChild(tr);
    }
    $("metric").textContent = "Scores: " + doc.metric.score + ".";
    $("query-info").hidden = false;
  }

  function hitCard(h) {
    var fig = el("figure", "hit");
    var box = el("div", "thumb");
    var img = el("img");
    img.alt = "hit " + h.id;
    img.loading = "lazy";
    img.addEventListener("error", function () {
      var miss = el("div", "missing", "no image");
      box.replaceWith(miss);
    });
    img.src = h.thumbnail_url;
    box.appendChild(img);
    fig.appendChild(box);
    var cap = el("figcaption");
    cap.appendChild(el("div", "score", score(h.score)));
    cap.appendChild(el("div", "id", h.id));
    fig.appendChild(cap);
    return fig;
  }

  function studyCard(st) {
    var sec = el("section", "study");
    var head = el("div", "study-head");
    var h2 = el("h2", null, st.study_uid ? "Study " : "Without study UID");
    if (st.study_uid) h2.appendChild(el("code", null, st.study_uid));
    head.appendChild(h2);
    head.appendChild(el("span", "score", score(st.score)));
    if (st.modality) head.appendChild(el("span", "tag modality", st.modality));
    if (st.body_part) head.appendChild(el("span", "tag body-part", st.body_part));
    if (st.viewer_url && /^https?:\/\//.test(st.viewer_url)) {
      var a = el("a", "viewer", "Open in viewer");
      a.href = st.viewer_url;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      head.appendChild(a);
    }
    sec.appendChild(head);
    st.series.forEach(function (se) {
      var div = el("div", "series");
      var h3 = el("h3", null, se.series_uid ? "Series " : "No series UID");
      if (se.series_uid) h3.appendChild(el("code", null, se.series_uid));
      h3.appendChild(el("span", "count", " " + se.hits.length + (se.hits.length === 1 ? " hit" : " hits")));
      div.appendChild(h3);
      var grid = el("div", "grid");
      se.hits.forEach(function (h) { grid.appendChild(hitCard(h)); });
      div.appendChild(grid);
      sec.appendChild(div);
    });
    return sec;
  }

  function showResults(doc) {
    showQuery(doc);
    var box = $("results");
    box.textContent = "";
    doc.studies.forEach(function (st) { box.appendChild(studyCard(st)); });
    var n = doc.studies.reduce(function (a, st) {
      return a + st.series.reduce(function (b, se) { return b + se.hits.length; }, 0);
    }, 0);
    box.dataset.hits = String(n);
    setState("done", n + " similar image(s) in " + doc.studies.length + " stud" +
             (doc.studies.length === 1 ? "y" : "ies") + ".");
  }

  function search(body, headers) {
    setState("loading", "Searching\u2026");
    $("results").textContent = "";
    return fetch("/api/similar", {method: "POST", body: body, headers: headers || {}}).then(function (r) {
      return r.json().catch(function () { return {detail: "HTTP " + r.status}; }).then(function (doc) {
        if (!r.ok) throw new Error((doc && doc.detail) || ("HTTP " + r.status));
        return doc;
      });
    }).then(showResults).catch(function (e) { setState("error", String(e.message || e)); });
  }

  function searchFile(file) {
    showPreview(file);
    if (config.max_upload_bytes && file.size > config.max_upload_bytes) {
      setState("error", "The file is larger than this page's upload limit (" + config.max_upload_bytes +
               " bytes).");
      return;
    }
    var form = new FormData();
    form.append("file", file);
    form.append("collection", $("collection").value);
    form.append("k", $("k").value);
    search(form);
  }

  function searchStudy(uid) {
    showPreview(null);
    search(JSON.stringify({study_uid: uid, collection: $("collection").value, k: Number($("k").value)}),
           {"Content-Type": "application/json"});
  }

  document.addEventListener("DOMContentLoaded", function () {
    var drop = $("drop"), input = $("file");
    input.addEventListener("change", function () { if (input.files.length) searchFile(input.files[0]); });
    ["dragenter", "dragover"].forEach(function (t) {
      drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (t) {
      drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.remove("over"); });
    });
    drop.addEventListener("drop", function (e) {
      if (e.dataTransfer && e.dataTransfer.files.length) searchFile(e.dataTransfer.files[0]);
    });
    $("query").addEventListener("submit", function (e) {
      e.preventDefault();
      var uid = $("study").value.trim();
      if (uid && config.pacs) searchStudy(uid);
      else if (input.files.length) searchFile(input.files[0]);
      else setState("error", "Drop a file or enter a StudyInstanceUID.");
    });
    loadCollections();
  });
})();
