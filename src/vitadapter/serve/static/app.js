// The page of `vitadapter serve`: upload a photo, show the overlay and a legend of classes.
// Plain browser JavaScript, no build step. URLs are relative, so the page also works behind a
// proxy that serves it under a sub-path.
"use strict";

const form = document.getElementById("upload-form");
const fileInput = document.getElementById("file");
const submit = document.getElementById("submit");
const statusLine = document.getElementById("status");
const errorLine = document.getElementById("error");
const result = document.getElementById("result");
const overlay = document.getElementById("overlay");
const legend = document.getElementById("legend");
const timing = document.getElementById("timing");

fetch("v1/model")
  .then((response) => (response.ok ? response.json() : null))
  .then((model) => {
    if (model) document.getElementById("model-name").textContent = model.name;
  })
  .catch(() => {});

fileInput.addEventListener("change", () => {
  if (fileInput.files.length) form.requestSubmit();
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = fileInput.files[0];
  if (!file) return;
  const body = new FormData();
  body.append("file", file);
  const params = new URLSearchParams({
    include_overlay: "true",
    legend: "false",
    alpha: document.getElementById("alpha").value,
    tta: document.getElementById("tta").checked ? "true" : "false",
  });
  submit.disabled = true;
  errorLine.hidden = true;
  statusLine.textContent = `Segmenting ${file.name}…`;
  try {
    const response = await fetch(`v1/segment?${params}`, { method: "POST", body });
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    show(data);
    statusLine.textContent = "";
  } catch (error) {
    statusLine.textContent = "";
    errorLine.textContent = error.message;
    errorLine.hidden = false;
  } finally {
    submit.disabled = false;
  }
});

function show(data) {
  overlay.src = data.overlay;
  legend.replaceChildren(...data.classes.map(legendEntry));
  const seconds = data.timing.inference_seconds.toFixed(2);
  timing.textContent = `${data.width}×${data.height} px, ${data.model}` +
    `${data.tta ? " with TTA" : ""}, ${seconds} s`;
  result.hidden = false;
}

function legendEntry(cls) {
  const item = document.createElement("li");
  item.className = "legend-entry";
  item.dataset.classId = cls.id;
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.backgroundColor = `rgb(${cls.color.join(", ")})`;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = cls.name;
  const share = document.createElement("span");
  share.className = "share";
  share.textContent = `${(100 * cls.share).toFixed(1)} %`;
  item.append(swatch, name, share);
  return item;
}
