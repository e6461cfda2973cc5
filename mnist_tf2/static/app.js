// The draw-a-digit page: strokes on a canvas go to POST /api/image as a PNG, the
// answer fills the top class, the ten bars and the 28x28 picture of the input.
"use strict";

const canvas = document.getElementById("canvas");
const pad = document.getElementById("pad");
const context = canvas.getContext("2d");
const statusLine = document.getElementById("status");
const prediction = document.getElementById("prediction");
const confidence = document.getElementById("confidence");
const input28 = document.getElementById("input28").getContext("2d");
const bars = document.getElementById("bars");

// A stroke about as thick, relative to the digit, as MNIST's pen.
const PEN_WIDTH = 20;
let drawing = false;
let last = null;
let hasInk = false;
let inFlight = false;    // at most one request at a time ...
let pending = false;     // ... and the latest drawing is sent once it returns
let generation = 0;      // answers for a cleared drawing are dropped
let answers = 0;         // for tests: how many answers have been shown

// For tests and the curious: <body data-answers="N" data-busy="0|1">.
function setBusy(busy) {
  inFlight = busy;
  document.body.dataset.busy = busy || pending ? "1" : "0";
}

function makeBars() {
  for (let digit = 0; digit < 10; digit++) {
    const item = document.createElement("li");
    item.className = "bar";
    item.dataset.digit = String(digit);
    item.dataset.probability = "0";
    item.innerHTML = `<span class="digit">${digit}</span>` +
      `<span class="track"><span class="fill"></span></span><span class="value"></span>`;
    bars.appendChild(item);
  }
}

function clearCanvas() {
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  hasInk = false;
}

function reset() {
  generation++;
  pending = false;
  clearCanvas();
  input28.clearRect(0, 0, 28, 28);
  prediction.textContent = "\u2013";
  prediction.dataset.class = "";
  confidence.textContent = "";
  for (const bar of bars.children) showBar(bar, 0, false);
  say("Draw a digit 0\u20139 in the box.");
}

function say(message, isError = false) {
  statusLine.textContent = message;
  statusLine.classList.toggle("error", isError);
}

function showBar(bar, probability, isTop) {
  bar.dataset.probability = String(probability);
  bar.classList.toggle("top", isTop);
  bar.querySelector(".fill").style.width = `${(100 * probability).toFixed(1)}%`;
  bar.querySelector(".value").textContent = `${(100 * probability).toFixed(1)}%`;
}

function showAnswer(answer) {
  prediction.textContent = String(answer.class);
  prediction.dataset.class = String(answer.class);
  confidence.textContent = `p = ${answer.probabilities[answer.class].toFixed(3)}`;
  answer.probabilities.forEach((p, digit) => showBar(bars.children[digit], p, digit === answer.class));
  const pixels = input28.createImageData(28, 28);
  answer.image.forEach((row, y) => row.forEach((value, x) => {
    const i = 4 * (28 * y + x);
    pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = value;
    pixels.data[i + 3] = 255;
  }));
  input28.putImageData(pixels, 0, 0);
  answers++;
  document.body.dataset.answers = String(answers);
}

// Sends an image file (a Blob) to the server and shows what comes back.
async function classify(blob) {
  const mine = generation;
  setBusy(true);
  try {
    const response = await fetch("/api/image", {method: "POST", body: blob,
                                                headers: {"Content-Type": blob.type || "application/octet-stream"}});
    const answer = await response.json();
    if (mine !== generation) return;
    if (!response.ok) {
      say(answer.error || `error ${response.status}`, true);
    } else {
      showAnswer(answer);
      say(`Read as ${answer.class}.`);
    }
  } catch (error) {
    if (mine === generation) say(`The server did not answer: ${error.message}`, true);
  } finally {
    const again = pending;
    pending = false;
    setBusy(false);
    if (again) sendDrawing();
  }
}

function sendDrawing() {
  if (!hasInk) return;
  if (inFlight) {
    pending = true;
    return;
  }
  setBusy(true);  // toBlob is asynchronous too
  canvas.toBlob((blob) => classify(blob), "image/png");
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return {x: (event.clientX - box.left) * canvas.width / box.width,
          y: (event.clientY - box.top) * canvas.height / box.height};
}

function strokeTo(p) {
  context.strokeStyle = "#000";
  context.fillStyle = "#000";
  context.lineWidth = PEN_WIDTH;
  context.lineCap = "round";
  context.lineJoin = "round";
  context.beginPath();
  if (last) {
    context.moveTo(last.x, last.y);
    context.lineTo(p.x, p.y);
    context.stroke();
  } else {
    context.arc(p.x, p.y, PEN_WIDTH / 2, 0, 2 * Math.PI);
    context.fill();
  }
  last = p;
  hasInk = true;
}

canvas.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);
  drawing = true;
  last = null;
  strokeTo(point(event));
});
canvas.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  event.preventDefault();
  strokeTo(point(event));
  sendDrawing();  // live: one request in flight, the newest drawing next
});
function endStroke() {
  if (!drawing) return;
  drawing = false;
  last = null;
  sendDrawing();
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

// Image files: the file itself is sent, so the server reads it exactly as
// `python -m mnist_tf2.predict FILE` would; the canvas shows it for reference.
async function useFile(file) {
  if (!file) return;
  reset();
  say(`Reading ${file.name}\u2026`);
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
    const w = bitmap.width * scale, h = bitmap.height * scale;
    context.drawImage(bitmap, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
    hasInk = true;
  } catch (error) {
    // The browser cannot show it; the server still says what is wrong with it.
  }
  await classify(file);
}

document.getElementById("clear").addEventListener("click", reset);
document.getElementById("file").addEventListener("change", (event) => {
  useFile(event.target.files[0]);
  event.target.value = "";  // choosing the same file again reloads it
});
pad.addEventListener("dragover", (event) => { event.preventDefault(); pad.classList.add("dragging"); });
pad.addEventListener("dragleave", () => pad.classList.remove("dragging"));
pad.addEventListener("drop", (event) => {
  event.preventDefault();
  pad.classList.remove("dragging");
  useFile(event.dataTransfer.files[0]);
});

makeBars();
reset();
document.body.dataset.answers = "0";
setBusy(false);
