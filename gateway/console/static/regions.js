// The body map: named regions on a 100 x 200 figure (front view, the patient's left on
// the right of the picture). A message's `svg_path` is the chosen region's path data.

const box = (x, y, w, h) => `M${x} ${y} H${x + w} V${y + h} H${x} Z`;

export const REGIONS = [
  ["Head", box(40, 2, 20, 22)],
  ["Neck", box(45, 24, 10, 8)],
  ["Right shoulder", box(24, 32, 14, 10)],
  ["Left shoulder", box(62, 32, 14, 10)],
  ["Chest", box(38, 32, 24, 24)],
  ["Abdomen", box(38, 56, 24, 22)],
  ["Lower back", box(38, 78, 24, 12)],
  ["Right arm", box(22, 42, 12, 46)],
  ["Left arm", box(66, 42, 12, 46)],
  ["Right hand", box(20, 88, 12, 12)],
  ["Left hand", box(68, 88, 12, 12)],
  ["Right hip", box(38, 90, 12, 14)],
  ["Left hip", box(50, 90, 12, 14)],
  ["Right thigh", box(38, 104, 11, 36)],
  ["Left thigh", box(51, 104, 11, 36)],
  ["Right knee", box(38, 140, 11, 10)],
  ["Left knee", box(51, 140, 11, 10)],
  ["Right lower leg", box(38, 150, 11, 36)],
  ["Left lower leg", box(51, 150, 11, 36)],
  ["Right foot", box(34, 186, 15, 10)],
  ["Left foot", box(51, 186, 15, 10)],
];

const byPath = new Map(REGIONS.map(([name, path]) => [path, name]));

/** The region's name for a message's path data ("a marked region" for one drawn elsewhere). */
export function regionName(svgPath) {
  return byPath.get(svgPath) ?? "a marked region";
}

const SVG = "http://www.w3.org/2000/svg";

/** Fill the select with the regions and keep the picture's highlight on the chosen one. */
export function bodyMap(select, svg) {
  select.append(new Option("Not marked", ""));
  for (const [name, path] of REGIONS) select.append(new Option(name, path));
  const shapes = REGIONS.map(([name, path]) => {
    const shape = document.createElementNS(SVG, "path");
    shape.setAttribute("d", path);
    shape.dataset.region = name;
    svg.append(shape);
    return shape;
  });
  const label = svg.querySelector("title");
  const show = () => {
    for (const shape of shapes) shape.classList.toggle("chosen", shape.getAttribute("d") === select.value);
    label.textContent = select.value ? `Body map: ${regionName(select.value)}` : "Body map: nothing marked";
  };
  select.addEventListener("change", show);
  show();
  return () => {
    select.value = "";
    show();
  };
}
