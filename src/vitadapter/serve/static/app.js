// The page of `vitadapter serve`: upload a photo, show its segmentation over it and a legend
// of the classes. Plain browser JavaScript, no build step. URLs are relative, so the page also
// works behind a proxy that serves it under a sub-path. The colour map is fetched once (the
// overlay at opacity 1) and laid over the photo: the opacity slider blends them in the browser
// without a new inference.
"use strict";

const form = document.getElementById("upload-form");
const fileInput = document.getElementById("file");
const submit = document.getElementById("submit");
const alpha = document.getElementById("alpha");
const statusLine = document.getElementById("status");
const errorLine = document.getElementById("error");
const result = document.getElementById("result");
const photo = document.getElementById("photo");
const overlay = document.getElementById("overlay");
const legend = document.getElementById("legend");
const timing = document.getElementById("timing");
let busy = false;

fetch("v1/model")
  .then((response) => (response.ok ? response.json() : null))
  .then((model) => {
    if (model) document.getElementById("model-name").textContent = model.name;
  })
  .catch(() => {});

alpha.addEventListener("input", () => {
  overlay.style.opacity = alpha.value;
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = fileInput.files[0];
  if (!file || busy) return;
  const body = new FormData();
  body.append("file", file);
  const params = new URLSearchParams({
    include_overlay: "true",
    legend: "false",
    alpha: "1",
    tta: document.getElementById("tta").checked ? "true" : "false",
  });
  busy = submit.disabled = true;
  errorLine.hidden = true;
  statusLine.textContent = `Segmenting ${file.name}…`;
  try {
    const response = await fetch(`v1/segment?${params}`, { method: "POST", body });
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    show(data, file);
    statusLine.textContent = "";
  } catch (error) {
    result.hidden = true; // never an earlier photo's result under this error
    statusLine.textContent = "";
    errorLine.textContent = error.message;
    errorLine.hidden = false;
  } finally {
    busy = submit.disabled = false;
  }
});

function show(data, file) {
  if (photo.src) URL.revokeObjectURL(photo.src);
  photo.src = URL.createObjectURL(file);
  overlay.src = data.overlay;
  overlay.style.opacity = alpha.value;
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
