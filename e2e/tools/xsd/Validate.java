// Validates XML files against an XML Schema with the JDK's own validator (JAXP, Xerces inside the JDK):
//   java Validate.java SCHEMA.xsd FILE.xml...
// Prints "valid: FILE" per valid file, and every error with its line and column; exits 1 when a file is
// invalid, 2 when the schema or a file cannot be read. No dependency beyond the JDK.
import java.io.File;
import java.util.ArrayList;
import java.util.List;
import javax.xml.XMLConstants;
import javax.xml.transform.stream.StreamSource;
import javax.xml.validation.Schema;
import javax.xml.validation.SchemaFactory;
import javax.xml.validation.Validator;
import org.xml.sax.ErrorHandler;
import org.xml.sax.SAXParseException;

public class Validate {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: java Validate.java SCHEMA.xsd FILE.xml...");
            System.exit(2);
        }
        SchemaFactory factory = SchemaFactory.newInstance(XMLConstants.W3C_XML_SCHEMA_NS_URI);
        Schema schema;
        try {
            schema = factory.newSchema(new File(args[0]));
        } catch (Exception e) {
            System.err.println("cannot read the schema " + args[0] + ": " + e.getMessage());
            System.exit(2);
            return;
        }
        boolean allValid = true;
        for (int i = 1; i < args.length; i++) {
            String file = args[i];
            List<String> errors = new ArrayList<>();
            Validator validator = schema.newValidator();
            validator.setErrorHandler(new ErrorHandler() {
                public void warning(SAXParseException e) {}
                public void error(SAXParseException e) { errors.add(describe(file, e)); }
                public void fatalError(SAXParseException e) { errors.add(describe(file, e)); }
            });
            try {
                validator.validate(new StreamSource(new File(file)));
            } catch (SAXParseException e) {
                // Already recorded by the handler.
            } catch (Exception e) {
                System.err.println("cannot read " + file + ": " + e.getMessage());
                System.exit(2);
            }
            if (errors.isEmpty()) {
                System.out.println("valid: " + file);
            } else {
                allValid = false;
                for (String error : errors) {
                    System.out.println(error);
                }
            }
        }
        System.exit(allValid ? 0 : 1);
    }

    static String describe(String file, SAXParseException e) {
        return "invalid: " + file + ":" + e.getLineNumber() + ":" + e.getColumnNumber() + ": " + e.getMessage();
    }
}
