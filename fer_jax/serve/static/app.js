// The fer_jax page: a photo (dropped or picked) or the camera's frames sent to POST /v1/predict,
// each face's box, emotion and confidence drawn, and its 7 probabilities as bars.
// The camera sends its next frame when the server has answered the last one, so the frame
// rate is the rate the server keeps up with.
'use strict';

const COLOURS = {angry: '#d62728', disgust: '#8c564b', fear: '#9467bd', happy: '#2ca02c',
                 sad: '#1f77b4', surprise: '#ff7f0e', neutral: '#7f7f7f'};
const $ = (id) => document.getElementById(id);
const colour = (emotion) => COLOURS[emotion] || '#e377c2';

function showError(sentence) {
  $('error').textContent = sentence;
  $('error').hidden = !sentence;
}

// POST one image; the parsed answer, or throws Error(the server's sentence). `explain`: a
// saliency method whose map the server adds to each face, or '' for none.
async function predict(body, detectOff, explain = '') {
  const query = new URLSearchParams();
  if (detectOff) query.set('detect', 'false');
  if (explain) query.set('explain', explain);
  const url = '/v1/predict' + (query.toString() ? '?' + query : '');
  const init = {method: 'POST'};
  if (body instanceof File) {  // a form upload, so the answer and any error name the file
    init.body = new FormData();
    init.body.append('file', body, body.name);
  } else {  // a camera frame: the raw body
    init.body = body;
    init.headers = {'Content-Type': body.type || 'application/octet-stream'};
  }
  const response = await fetch(url, init);
  let answer;
  try {
    answer = await response.json();
  } catch (e) {
    throw new Error(`the server answered ${response.status} without JSON.`);
  }
  if (!response.ok) {
    throw new Error(answer.error || `the server answered ${response.status}.`);
  }
  return answer;
}

// Boxes and "emotion confidence" on a 2-D context; `scale` maps image pixels to the canvas.
function drawFaces(context, faces, scale, width, height) {
  const line = Math.max(2, Math.round(Math.max(width, height) / 250));
  context.lineWidth = line;
  context.font = `${Math.max(12, 6 * line)}px system-ui, sans-serif`;
  context.textBaseline = 'bottom';
  for (const face of faces) {
    const [x, y, w, h] = (face.box || [0, 0, width / scale, height / scale]).map((v) => v * scale);
    const label = `${face.emotion} ${face.confidence.toFixed(2)}`;
    context.strokeStyle = colour(face.emotion);
    context.strokeRect(x, y, w, h);
    const textWidth = context.measureText(label).width + 2 * line;
    const textHeight = Math.max(12, 6 * line) + line;
    const top = y - textHeight > 0 ? y - textHeight : y;
    context.fillStyle = colour(face.emotion);
    context.fillRect(x, top, textWidth, textHeight);
    context.fillStyle = 'white';
    context.fillText(label, x + line, top + textHeight);
  }
}

// Matplotlib's 'jet' colour map, as the figures of `predict --explain` draw maps.
function jet(v) {
  const channel = (centre) =>
    Math.round(255 * Math.min(Math.max(1.5 - Math.abs(4 * v - centre), 0), 1));
  return [channel(3), channel(2), channel(1)];
}

// Each face's map (face.saliency, 48x48, from ?explain=grad_cam) at half opacity over its box:
// scaled to the square its crop covers (face.crop_square), as fer_jax.explain_figures.into_photo
// draws it. Returns how many maps were drawn.
function drawMaps(context, faces, width, height) {
  let drawn = 0;
  for (const face of faces) {
    if (!face.saliency) continue;
    const size = face.saliency.length;
    const top = Math.max(...face.saliency.flat(), 1e-12);
    const map = document.createElement('canvas');
    map.width = map.height = size;
    const pixels = map.getContext('2d').createImageData(size, size);
    face.saliency.flat().forEach((value, i) => {
      pixels.data.set([...jet(Math.max(value, 0) / top), 128], 4 * i);
    });
    map.getContext('2d').putImageData(pixels, 0, 0);
    const [x, y, w, h] = face.box || [0, 0, width, height];
    const [x0, y0, side] = face.box ? face.crop_square : [0, 0, null];
    context.save();
    context.beginPath();
    context.rect(x, y, w, h);
    context.clip();
    context.imageSmoothingEnabled = true;
    if (side) context.drawImage(map, x0, y0, side, side);
    else context.drawImage(map, 0, 0, width, height);  // the whole image is the face
    context.restore();
    drawn += 1;
  }
  return drawn;
}

// One card per face: its emotion, confidence, box and a bar per class.
function faceCards(answer) {
  const cards = $('faces');
  cards.replaceChildren();
  if (!answer.faces.length) {
    const note = document.createElement('p');
    note.className = 'no-face';
    note.textContent = 'No face found. If the image is a face crop already, tick "the whole ' +
        'image is one face".';
    cards.append(note);
  }
  answer.faces.forEach((face, index) => {
    const card = document.createElement('div');
    card.className = 'face';
    card.innerHTML = `<h3>Face ${index + 1}: <span class="emotion"></span>
        <span class="confidence"></span></h3><p class="box"></p>`;
    card.querySelector('.emotion').textContent = face.emotion;
    card.querySelector('.emotion').style.color = colour(face.emotion);
    card.querySelector('.confidence').textContent = face.confidence.toFixed(3);
    card.querySelector('.box').textContent = face.box ?
        `box x ${face.box[0]}, y ${face.box[1]}, ${face.box[2]} x ${face.box[3]} px` :
        'the whole image';
    for (const label of answer.labels) {
      const p = face.probabilities[label];
      const bar = document.createElement('div');
      bar.className = 'bar';
      bar.dataset.label = label;
      bar.innerHTML = '<span class="name"></span><span class="track"><span class="fill">' +
          '</span></span><span class="value"></span>';
      bar.querySelector('.name').textContent = label;
      bar.querySelector('.fill').style.cssText =
          `display:block;width:${(100 * p).toFixed(1)}%;background:${colour(label)}`;
      bar.querySelector('.value').textContent = p.toFixed(3);
      card.append(bar);
    }
    cards.append(card);
  });
}

let shownFile = null;  // the photo on the page, asked again when a box is ticked

async function showPhoto(file) {
  shownFile = file;
  showError('');
  $('status').textContent = `classifying ${file.name}…`;
  let answer;
  try {
    answer = await predict(file, $('crop').checked, $('why').checked ? 'grad_cam' : '');
  } catch (e) {
    $('status').textContent = '';
    $('photo-view').hidden = true;
    showError(e.message);
    return;
  }
  const image = answer.images[0];
  const canvas = $('photo');
  canvas.width = image.width;
  canvas.height = image.height;
  const context = canvas.getContext('2d');
  context.fillStyle = '#ddd';
  context.fillRect(0, 0, image.width, image.height);
  const picture = new Image();
  picture.onload = () => {
    context.drawImage(picture, 0, 0, image.width, image.height);
    canvas.dataset.maps = drawMaps(context, answer.faces, image.width, image.height);
    drawFaces(context, answer.faces, 1, image.width, image.height);
    URL.revokeObjectURL(picture.src);
  };
  picture.onerror = () => drawFaces(context, answer.faces, 1, image.width, image.height);
  picture.src = URL.createObjectURL(file);
  faceCards(answer);
  $('photo-view').hidden = false;
  $('status').textContent = `${answer.faces.length} face(s) in ${file.name} ` +
      `(${image.width} x ${image.height} px), ${answer.ms.toFixed(0)} ms on the server.`;
}

// The camera: a request loop, one frame in flight at a time.
const camera = {stream: null, frames: 0, times: []};

async function cameraLoop() {
  const video = $('video');
  const overlay = $('overlay');
  const grab = document.createElement('canvas');
  while (camera.stream) {
    if (!video.videoWidth) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      continue;
    }
    const scale = Math.min(1, 640 / Math.max(video.videoWidth, video.videoHeight));
    grab.width = Math.round(video.videoWidth * scale);
    grab.height = Math.round(video.videoHeight * scale);
    grab.getContext('2d').drawImage(video, 0, 0, grab.width, grab.height);
    const blob = await new Promise((resolve) => grab.toBlob(resolve, 'image/jpeg', 0.85));
    let answer;
    try {
      answer = await predict(blob, false);
      showError('');
    } catch (e) {
      showError(e.message);
      await new Promise((resolve) => setTimeout(resolve, 500));
      continue;
    }
    if (!camera.stream) break;
    overlay.width = video.clientWidth;
    overlay.height = video.clientHeight;
    const context = overlay.getContext('2d');
    context.clearRect(0, 0, overlay.width, overlay.height);
    drawFaces(context, answer.faces, overlay.width / grab.width, overlay.width, overlay.height);
    const now = performance.now();
    camera.frames += 1;
    camera.times.push(now);
    while (camera.times.length > 2 && now - camera.times[0] > 3000) camera.times.shift();
    const span = (now - camera.times[0]) / 1000;
    $('frames').textContent = camera.frames;
    $('fps').textContent = span > 0 ? ((camera.times.length - 1) / span).toFixed(1) : '0.0';
    $('camera-faces').textContent = answer.faces.length ?
        answer.faces.map((f) => `${f.emotion} ${f.confidence.toFixed(2)}`).join(', ') :
        'no face in view';
  }
}

async function toggleCamera() {
  const button = $('camera');
  if (camera.stream) {
    camera.stream.getTracks().forEach((track) => track.stop());
    camera.stream = null;
    button.classList.remove('on');
    button.textContent = 'camera';
    $('camera-view').hidden = true;
    return;
  }
  showError('');
  try {
    camera.stream = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 480},
                                                               audio: false});
  } catch (e) {
    showError(`the camera could not be opened (${e.name}); allow this page to use it, or ` +
              'drop a photo instead.');
    return;
  }
  camera.frames = 0;
  camera.times = [];
  $('video').srcObject = camera.stream;
  $('camera-view').hidden = false;
  button.classList.add('on');
  button.textContent = 'stop camera';
  cameraLoop();
}

function setUp() {
  const drop = $('drop');
  $('file').addEventListener('change', () => {
    if ($('file').files.length) showPhoto($('file').files[0]);
  });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (e.dataTransfer.files.length) showPhoto(e.dataTransfer.files[0]);
  });
  $('camera').addEventListener('click', toggleCamera);
  for (const box of ['crop', 'why']) {
    $(box).addEventListener('change', () => { if (shownFile) showPhoto(shownFile); });
  }
  fetch('/v1/model').then((r) => r.json()).then((model) => {
    $('model').textContent = `${model.version}, TTA ${model.tta}, ` +
        `${(model.parameters / 1e6).toFixed(1)} M parameters`;
  }).catch(() => { $('model').textContent = ''; });
}

setUp();
