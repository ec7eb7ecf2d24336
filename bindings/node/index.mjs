import lib from './index.js';
export const { open, Connection, Writer, Subscription, LaminarError, version } = lib;
export default lib;
