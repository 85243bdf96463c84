/** Text imports (`with { type: "text" }`) of files bun-types has no declaration for: embedded as strings. */
declare module "*.service" {
  const text: string;
  export default text;
}
